"""Numbered, append-only schema migrations of the ledger.

Invariants:
- ``MIGRATIONS[i]`` brings a ledger from ``user_version == i`` to ``i + 1``. A released
  migration is never edited; a change is a new entry at the end.
- Each migration runs in the same transaction as its ``PRAGMA user_version`` bump, so a
  crash leaves the ledger at the old version or the new one, never between.
- Every query the runner makes has an index (``tests/test_ledger.py`` checks the plans).
"""

from __future__ import annotations

#: v1: shots, attempts, archived versions of changed shots, notable events, runs, meta.
V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE shots (
    shot_id       TEXT PRIMARY KEY,
    version       INTEGER NOT NULL DEFAULT 1,   -- bumped when the request changes
    seq           INTEGER NOT NULL,             -- order in the manifest
    in_manifest   INTEGER NOT NULL DEFAULT 1,   -- 0: dropped from the manifest
    mode          TEXT NOT NULL,                -- text | image | fusion
    prompt        TEXT NOT NULL,
    model         TEXT,
    quality       TEXT,
    duration      TEXT,
    motion_mode   TEXT,
    request_json  TEXT NOT NULL,                -- the body sent (local images as file:// URIs)
    request_hash  TEXT NOT NULL,
    output_path   TEXT NOT NULL,                -- relative to the output directory
    price_uptc    INTEGER,                      -- micro-PTC; NULL when the price is unknown
    max_attempts  INTEGER NOT NULL,
    state         TEXT NOT NULL,                -- runner.model.ShotState
    attempts      INTEGER NOT NULL DEFAULT 0,   -- render attempts started
    task_id       TEXT,                         -- as the provider sent it, as text
    video_url     TEXT,
    poster_url    TEXT,
    seed          INTEGER,
    width         INTEGER,
    height        INTEGER,
    bytes         INTEGER,
    sha256        TEXT,
    poll_count    INTEGER NOT NULL DEFAULT 0,
    next_poll_at  REAL,                         -- unix seconds
    not_before    REAL,                         -- earliest next submit (backoff)
    submitted_at  REAL,
    rendered_at   REAL,
    done_at       REAL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    error_kind    TEXT,                         -- machine-readable reason of last_error
    last_error    TEXT                          -- the provider's message or ours
);
CREATE INDEX shots_by_state ON shots (state, seq);
CREATE INDEX shots_by_task ON shots (task_id);

CREATE TABLE attempts (
    attempt_id    INTEGER PRIMARY KEY,
    shot_id       TEXT NOT NULL REFERENCES shots (shot_id),
    shot_version  INTEGER NOT NULL,
    attempt_no    INTEGER NOT NULL,             -- render attempt; retries of a call share it
    trace_id      TEXT NOT NULL,                -- Ai-trace-id sent with the request
    request_hash  TEXT NOT NULL,
    sent_at       REAL NOT NULL,                -- committed BEFORE the request is sent
    finished_at   REAL,
    outcome       TEXT NOT NULL,                -- runner.ledger.AttemptOutcome
    task_id       TEXT,
    http_status   INTEGER,
    message       TEXT,
    charged_uptc  INTEGER                       -- what an accepted request costs
);
CREATE INDEX attempts_by_shot ON attempts (shot_id, attempt_id);
CREATE INDEX attempts_by_trace ON attempts (trace_id);
CREATE INDEX attempts_by_outcome ON attempts (outcome, charged_uptc);

CREATE TABLE shot_versions (
    shot_id       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    request_json  TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    state         TEXT NOT NULL,
    task_id       TEXT,
    output_path   TEXT,
    bytes         INTEGER,
    sha256        TEXT,
    archived_at   REAL NOT NULL,
    PRIMARY KEY (shot_id, version)
);
CREATE INDEX shot_versions_by_output ON shot_versions (output_path);

CREATE TABLE events (
    event_id      INTEGER PRIMARY KEY,
    at            REAL NOT NULL,
    kind          TEXT NOT NULL,                -- runner.ledger.EventKind
    shot_id       TEXT,
    message       TEXT NOT NULL
);
CREATE INDEX events_by_time ON events (at);

CREATE TABLE runs (
    run_id        INTEGER PRIMARY KEY,
    started_at    REAL NOT NULL,
    ended_at      REAL,
    pid           INTEGER NOT NULL,
    exit_code     INTEGER,
    summary       TEXT                          -- JSON: counts, spent, calls
);
"""

#: v2: the ledger's private trace secret (every Ai-trace-id derives from it, so two
#: ledgers never send the same id); refunds and the provider's own cost figure per
#: attempt; the upload cache (one upload per distinct local image per ledger); a
#: re-rolled shot's seed, kept across manifest syncs.
V2 = """
INSERT OR IGNORE INTO meta (key, value) VALUES ('trace_secret', lower(hex(randomblob(32))));

ALTER TABLE attempts ADD COLUMN refunded_uptc INTEGER;  -- given back by the provider
ALTER TABLE attempts ADD COLUMN points TEXT;            -- the provider's cost figure, as sent

CREATE TABLE uploads (
    sha256        TEXT PRIMARY KEY,             -- content of the local image
    url           TEXT NOT NULL,                -- where the provider keeps it
    bytes         INTEGER NOT NULL,
    charged_uptc  INTEGER,                      -- what the upload cost (price table)
    uploaded_at   REAL NOT NULL
);

ALTER TABLE shots ADD COLUMN seed_override INTEGER;     -- pixrun retry --new-seed
ALTER TABLE shots ADD COLUMN override_base_hash TEXT;   -- the manifest request it re-rolls
"""

#: v3: the ledger's private callback secret (the first path segment of every callback
#: URL pixrun gives the provider; it survives reruns, so a rerun recognises its own).
V3 = """
INSERT OR IGNORE INTO meta (key, value) VALUES ('callback_secret', lower(hex(randomblob(32))));
"""

MIGRATIONS: tuple[str, ...] = (V1, V2, V3)

LATEST_VERSION = len(MIGRATIONS)
