-- Stock for the seeded catalogue (product ids 1-4); a migration runs once, so restarts never re-seed.
INSERT INTO stock (product_id, available) VALUES (1, 500), (2, 500), (3, 500), (4, 500);
