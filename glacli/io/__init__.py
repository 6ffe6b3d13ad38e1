"""Files and models: the gla HDF5 kinds (:mod:`~glacli.io.store`), other tools' formats, data
sources, encoders, the extraction pipeline, prompt templates and figures."""
