-- Idle consumers are no longer woken by a trigger on emt_messages. A NOTIFY inside the
-- appending transaction takes a server-wide lock at pre-commit and keeps it until the
-- commit record is flushed, so every appending commit (its fsync included) ran one at a
-- time and group commit was lost. tide's writers now send the NOTIFY after their commit,
-- in a transaction of its own that does not wait for the disk; appends by others are found
-- by the daemon's probe (README, "The daemon").
--
-- Whoever prefers the old behaviour (an Emmett or psql append waking the daemon at once,
-- at that cost) turns the trigger on with `tide migrate --notify-trigger`
-- (tide_notify_trigger(true)), and off again with `--no-notify-trigger`.
CREATE OR REPLACE FUNCTION tide_notify_trigger(p_on boolean) RETURNS void
LANGUAGE plpgsql AS $tide_notify_trigger$
BEGIN
    DROP TRIGGER IF EXISTS tide_notify_messages ON emt_messages;
    IF p_on THEN
        CREATE TRIGGER tide_notify_messages AFTER INSERT ON emt_messages
            FOR EACH STATEMENT EXECUTE FUNCTION tide_notify_messages();
    END IF;
END;
$tide_notify_trigger$;

SELECT tide_notify_trigger(false);

-- tide_append() (sql/0002) is no longer what tide calls: its append is one prepared
-- statement (engine/append.c). The function stays for older tide binaries that share
-- the database during an upgrade.
