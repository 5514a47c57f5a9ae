-- Nothing to do: 0001 indexes lower(email) already. Kept so both databases count the same migrations.
SELECT 1;
