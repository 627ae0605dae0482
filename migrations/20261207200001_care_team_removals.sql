-- The care-team rows that access decisions rest on are checked against the ledger when
-- they are read (projections/src/backed.rs): the assignment event is found through
-- ledger_events_stream_time_idx, and "no removal of that clinician follows it" through
-- this index, one probe into the patient's few removal events instead of a walk over
-- every later event of the stream. Partial: only removals are indexed, so appends of
-- other events do not maintain it.
CREATE INDEX ledger_events_care_removed_idx ON ledger_events (stream_id, position)
    WHERE event_type = 'care_team.member_removed';
