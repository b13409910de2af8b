"""Running a batch: everything between a loaded manifest and files on disk.

- :mod:`.batch`: one batch end to end (``run_batch``): set-up, checks, the run, the end.
- :mod:`.setup`, :mod:`.guard`, :mod:`.preview`, :mod:`.preflight`: before anything is
  spent: options and where things go, whose the ledger is, what it will cost and the
  person's consent, the output disk.
- :mod:`.scheduler`: the state machine (dispatch, each shot's lifecycle, stopping),
  around the rooms :mod:`.submit`, :mod:`.poll`, :mod:`.collect`, :mod:`.health`, which
  all change shots through the one writer in :mod:`.transitions`, sharing
  :mod:`.context`; :mod:`.flow` (concurrency, rate, polling times), :mod:`.uploads`.
- :mod:`.commands`: re-queue, re-roll, resolve between runs.
- :mod:`.events` (what a run tells a display), :mod:`.crashpoints` (crash tests),
  :mod:`.options` (options, stop reasons, exit codes).

Nothing is imported here, so that importing :mod:`runner.run.events` (the displays do)
does not load the HTTP client.
"""
