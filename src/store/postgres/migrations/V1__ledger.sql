-- The ledger on PostgreSQL: the same tables as the SQLite ledger (see
-- src/store/sqlite.rs), with PostgreSQL's types. Times are timestamptz
-- cut to milliseconds by amtsbote, so that a time read back (and a search
-- cursor made of it) equals the one written.

CREATE TABLE submissions (
    id          uuid PRIMARY KEY,
    service     text NOT NULL,
    region      text NOT NULL,
    reference   text,
    -- The state across targets, kept by every write that changes a
    -- delivery (under the submission's row lock).
    state       text NOT NULL,
    received_at timestamptz NOT NULL,
    size        bigint,
    sha256      text,
    sender      text
);
CREATE INDEX submissions_received ON submissions (received_at, id);
CREATE INDEX submissions_reference ON submissions (reference);
CREATE INDEX submissions_state ON submissions (state, received_at);

CREATE TABLE deliveries (
    submission_id   uuid NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
    target          text NOT NULL,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_outcome    text,
    updated_at      timestamptz NOT NULL,
    mapping_version text,
    receipt         text,
    PRIMARY KEY (submission_id, target)
);
CREATE INDEX deliveries_open ON deliveries (state, target);

-- The key is claimed by its unique constraint: of two processes that
-- claim it at once, one inserts, the other waits and finds it. The claim
-- comes first in its transaction, before the submission it names (hence
-- the deferred reference).
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    fingerprint   bytea NOT NULL,
    submission_id uuid NOT NULL REFERENCES submissions (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at    timestamptz NOT NULL,
    claimed_at    timestamptz
);
CREATE INDEX idempotency_keys_submission ON idempotency_keys (submission_id);

CREATE TABLE events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission_id   uuid NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    kind            text NOT NULL,
    target          text,
    attempt         integer,
    mapping_version text,
    detail          text,
    receipt         text,
    size            bigint,
    sha256          text,
    operator        text,
    duration_ms     bigint
);
CREATE INDEX events_submission ON events (submission_id, seq);
CREATE INDEX events_at ON events (at, target);

CREATE TABLE operator_actions (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL,
    operator      text NOT NULL,
    action        text NOT NULL,
    target        text NOT NULL,
    submission_id text NOT NULL,
    parked_reason text NOT NULL,
    comment       text,
    generation    integer,
    replay_id     uuid
);
CREATE INDEX operator_actions_at ON operator_actions (at);
-- One operator action per parked copy of a delivery.
CREATE UNIQUE INDEX operator_actions_once ON operator_actions (submission_id, target, generation)
    WHERE generation IS NOT NULL;

CREATE TABLE mapping_versions (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    source     text NOT NULL,
    first_seen timestamptz NOT NULL
);

CREATE TABLE health (id integer PRIMARY KEY CHECK (id = 1), at timestamptz NOT NULL);

-- The ledger's own name, which a blob store remembers.
CREATE TABLE ledger (id integer PRIMARY KEY CHECK (id = 1), ledger_id text NOT NULL);
INSERT INTO ledger (id, ledger_id) VALUES (1, replace(gen_random_uuid()::text, '-', ''));

CREATE TABLE fit_connect_decisions (
    fit_submission_id uuid PRIMARY KEY,
    case_id           uuid NOT NULL,
    destination_id    uuid NOT NULL,
    submission_id     uuid,
    verdict           text NOT NULL,
    payload           text NOT NULL,
    decided_at        timestamptz NOT NULL,
    sent_at           timestamptz
);
CREATE INDEX fit_connect_decisions_submission ON fit_connect_decisions (submission_id) WHERE submission_id IS NOT NULL;
