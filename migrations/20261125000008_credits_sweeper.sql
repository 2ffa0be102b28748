-- The sweeper settles reservations that a dead worker left open. It lists them across orgs in a
-- transaction that sets app.sweeper, and settles each inside its own org's transaction.
CREATE POLICY reservations_sweeper ON credits.reservations FOR SELECT
    USING (current_setting('app.sweeper', true) = 'on');
