-- Module servers: the admin endpoint an agent advertises, so a replica that holds no socket for
-- it can deliver a dispatch directly (route() "direct"). Written by the replica that accepts the
-- agent's hello; NULL when the agent advertises none (its admin API stays on loopback).
ALTER TABLE servers ADD COLUMN admin_url text CHECK (admin_url IS NULL OR length(admin_url) <= 512);

-- Module servers: a dispatch a caller waits for (wait_seconds) signals its outcome on
-- flotilla_dispatch_done; the others do not. A NOTIFY serializes its transaction's commit
-- (PostgreSQL holds the notification queue lock across the commit record's flush), so a done
-- signal nobody waits for would cost every dispatch one serialized flush.
ALTER TABLE dispatches ADD COLUMN notify_done boolean NOT NULL DEFAULT false;
