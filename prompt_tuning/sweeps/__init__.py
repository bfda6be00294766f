"""Scale sweeps: a sweep file's grid of ordinary training runs, executed locally or on Ray, then one report.

spec.py       the sweep file (gin): axes, grids, zipped axes; expanded to runs
planning.py   each run's gin config parsed and sized before anything starts
records.py    the sweep folder: one MODEL_DIR per run, its command line, attempts, done/failed states
executors.py  local (N at a time, pinned to cores/GPUs) and Ray (one task per run) execution, with retries
report.py     the table (CSV, Markdown; mean +- std over seeds), the paper's figures, TensorBoard hparams
cli.py        `prompt-tuning sweep plan|run|status|report`
"""
