-- Module servers: the admin endpoint an agent advertises, so a replica that holds no socket for
-- it can deliver a dispatch directly (route() "direct"). Written by the replica that accepts the
-- agent's hello; NULL when the agent advertises none (its admin API stays on loopback).
ALTER TABLE servers ADD COLUMN admin_url text CHECK (admin_url IS NULL OR length(admin_url) <= 512);
