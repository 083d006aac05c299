"""Results as the paper's tables and figures: ``mcmdpo report`` and the ``report`` stage.

Modules (one concern each): :mod:`~mcmdpo.report.collect` (run dirs -> metrics files, training logs),
:mod:`~mcmdpo.report.estimators` (what each metric's interval resamples), :mod:`~mcmdpo.report.stats`
(vectorised bootstrap, paired p-values), :mod:`~mcmdpo.report.results` (``results.csv``),
:mod:`~mcmdpo.report.labels`, :mod:`~mcmdpo.report.layouts`, :mod:`~mcmdpo.report.tables` (Markdown,
LaTeX, rich), :mod:`~mcmdpo.report.figures`, :mod:`~mcmdpo.report.paper` (published numbers),
:mod:`~mcmdpo.report.compare` (``--compare``), :mod:`~mcmdpo.report.cases` (per-item outputs, paper
Fig. 8), :mod:`~mcmdpo.report.html` (``index.html``; page building in :mod:`~mcmdpo.report.pages`,
scripts in ``web/``), the human evaluation (paper Fig. 6: :mod:`~mcmdpo.report.humaneval` formats,
:mod:`~mcmdpo.report.annotation` pages, :mod:`~mcmdpo.report.humaneval_results` collection),
:mod:`~mcmdpo.report.outputs` (``write_report``, ``results_table``) and :mod:`~mcmdpo.report.spec`
(``[report]``). Importing this package is cheap
(numpy and matplotlib load inside the functions that need them).
"""
