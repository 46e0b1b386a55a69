-- Aggregate snapshots: a decider's state folded up to a stream position, so that
-- `aggregate` and `handle` fold only the events after it (lua/tide/command.lua; the
-- statements that read and write this table are in engine/snapshot.c).
--
-- One row per (partition, stream, decider): the latest snapshot only. `version` is the
-- decider's snapshot version (snapshot = { version = V }): a row of another version is
-- ignored, or passed through the decider's upgrade(). `global_position` is that of the
-- event at `stream_position` when the snapshot was taken: a snapshot is trusted only while
-- the stream's active event at that position is still that very event, so one taken before
-- the stream was archived (or truncated, or begun again) is never folded onto.
CREATE TABLE IF NOT EXISTS tide_snapshots (
    partition       text        NOT NULL,
    stream_id       text        NOT NULL,
    decider         text        NOT NULL,
    version         int         NOT NULL,
    stream_position bigint      NOT NULL CHECK (stream_position > 0),
    global_position bigint      NOT NULL,
    state           jsonb       NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, stream_id, decider)
);
