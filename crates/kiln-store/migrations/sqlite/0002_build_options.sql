-- Per-version switches of the post-build steps, as JSON ({"optimize": true, ...}).
ALTER TABLE builds ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
ALTER TABLE versions ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
