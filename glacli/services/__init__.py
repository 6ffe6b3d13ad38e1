"""One function per task of gla, shared by the commands (and so by the Makefile recipes, which run them).

    extract.py      extract, check_backend         images or texts -> a features file
    zeroshot.py     zeroshot_head                  class names -> a zero-shot head file
    fit.py          fit_head                       features -> a linear-probe head file
    fit_prompt.py   fit_prompt_head                image features -> a learned-prompt head file
    fit_defaults.py                                the defaults gla fit --help shows (no torch)
    logits.py       logits_file                    features x head -> a logits file
    calibrate.py    calibrate_file                 temperature scaling of a logits file
    estimate.py     estimate_prior_file            zero-shot logits -> the label prior q (a prior file)
    estimate_target.py  estimate_target_file       test logits -> their label distribution (MLLS, BBSE)
    combine.py      combine_files                  GLA, the debiased zero-shot model, the ensemble
    evaluate.py     evaluate_files                 metrics of logits files (gla.evaluate over streamed files)
    report.py       report_files                   results JSON -> a Markdown table and a plot
    subset.py       subset_file                    class-balanced few-shot splits
    interchange.py  import_file, export_file       foreign formats <-> gla files
    info.py         describe_file                  what a gla file is and where it came from
    interpolate.py  interpolate_files              WiSE-FT between two checkpoints or two head files
    project.py      project_file                   logits restricted or max-merged onto a set's classes

A service validates its inputs first (glacli.base.validation), reads and writes through the gla file kinds
(glacli.io.rowfile, glacli.io.paramfile) and the formats, calls the math, and returns plain data; it talks to the user only through a
:class:`glacli.base.types.Reporter`. Nothing here imports typer or rich. This package imports no
service itself, so a command loads only its own (``gla combine`` never imports torch).
"""
