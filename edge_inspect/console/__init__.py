"""The operator console (`edge-inspect console`): live line view, alarms, REVIEW queue, shifts, part lookup.

Its own process beside the inspector: it only reads the record store (SQLite in WAL mode, so readers never
block the record stage) and keeps its own state (alarms, acknowledgements, audit) in a file of its own, so
a slow or crashed console never slows the line. Modules, in the order data travels:

- `settings`: what the console reads (workdir, shifts, recipe) and how it serves;
- `line_watch`: pure: recorded results in, camera tiles and alarms out;
- `store`: the console's SQLite file: alarms, acknowledgements, audit trail, the feed's cursor;
- `feed`: the thread that follows the record store and feeds `line_watch`, `store` and `hub`;
- `hub`: live events to browsers over bounded queues; a browser that falls behind is dropped;
- `views`: read-only queries (REVIEW queue, shift view, part lookup, images);
- `users`, `auth`: local users with argon2 hashes, sessions, or a reverse proxy's user header;
- `app`: the FastAPI application and the page (templates/, static/: plain JS and CSS, no build step).
"""
