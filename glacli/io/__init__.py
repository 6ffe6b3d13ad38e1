"""Files and models: the gla HDF5 kinds (what every file shares in :mod:`~glacli.io.h5file`; rows in
:mod:`~glacli.io.rowfile`; priors and heads in :mod:`~glacli.io.paramfile`; checks across files in
:mod:`~glacli.io.crossfile`; ``gla info``'s :mod:`~glacli.io.summary`), atomic outputs
(:mod:`~glacli.io.outputs`), other tools' formats, data sources, encoders, the extraction pipeline,
prompt templates and figures."""
