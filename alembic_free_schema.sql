-- tessq status database schema, as plain DDL (no migration tool needed).
-- This file is what creates the tables on every backend (tessq/db.py: create_schema), and
-- tests/test_schema.py proves it matches the peewee models in tessq/db.py column for column.
--
-- Dialects: the text below is valid SQLite. For PostgreSQL exactly one substitution is made:
--   "INTEGER NOT NULL PRIMARY KEY"  ->  "SERIAL NOT NULL PRIMARY KEY"   (auto-increment ids)
-- DOUBLE PRECISION is 8-byte on both (never REAL: 4 bytes on PostgreSQL, 128 s resolution for epochs).
-- Timestamps are epoch seconds; lease_until is measured on the database server's clock.

CREATE TABLE IF NOT EXISTS "job" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "input_dir" TEXT NOT NULL,
    "output_dir" TEXT NOT NULL,
    "options" TEXT NOT NULL,
    "options_hash" VARCHAR(64) NOT NULL,
    "created_at" DOUBLE PRECISION NOT NULL,
    "updated_at" DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "job_input_dir" ON "job" ("input_dir");

CREATE TABLE IF NOT EXISTS "folder" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "job_id" INTEGER NOT NULL REFERENCES "job" ("id") ON DELETE CASCADE,
    "path" TEXT NOT NULL,
    "n_tiffs" INTEGER NOT NULL,
    "n_other_images" INTEGER NOT NULL,
    "skip_reason" VARCHAR(64)
);
CREATE INDEX IF NOT EXISTS "folder_job_id" ON "folder" ("job_id");
CREATE UNIQUE INDEX IF NOT EXISTS "folder_job_id_path" ON "folder" ("job_id", "path");

CREATE TABLE IF NOT EXISTS "image" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "job_id" INTEGER NOT NULL REFERENCES "job" ("id") ON DELETE CASCADE,
    "rel_path" TEXT NOT NULL,
    "folder" TEXT NOT NULL,
    "out_rel" TEXT NOT NULL,
    "src_size" BIGINT NOT NULL,
    "src_mtime" DOUBLE PRECISION NOT NULL,
    "width" INTEGER,
    "height" INTEGER,
    "pixel_bytes" BIGINT,
    "status" VARCHAR(16) NOT NULL,
    "skip_reason" VARCHAR(64),
    "attempts" INTEGER NOT NULL,
    "worker" VARCHAR(255),
    "lease_until" DOUBLE PRECISION,
    "options_hash" VARCHAR(64),
    "error_type" VARCHAR(64),
    "error_message" TEXT,
    "queued_at" DOUBLE PRECISION,
    "started_at" DOUBLE PRECISION,
    "finished_at" DOUBLE PRECISION,
    "duration_s" DOUBLE PRECISION,
    "n_slices" INTEGER,
    "bytes_out" BIGINT,
    "verified" INTEGER,
    "verified_at" DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS "image_job_id" ON "image" ("job_id");
CREATE INDEX IF NOT EXISTS "image_status" ON "image" ("status");
CREATE INDEX IF NOT EXISTS "image_lease_until" ON "image" ("lease_until");
CREATE INDEX IF NOT EXISTS "image_finished_at" ON "image" ("finished_at");
CREATE UNIQUE INDEX IF NOT EXISTS "image_job_id_rel_path" ON "image" ("job_id", "rel_path");

CREATE TABLE IF NOT EXISTS "upload" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "key" TEXT NOT NULL,
    "local_path" TEXT NOT NULL,
    "size" BIGINT NOT NULL,
    "mtime" DOUBLE PRECISION NOT NULL,
    "checksum" VARCHAR(128) NOT NULL,
    "etag" VARCHAR(128),
    "uploaded_at" DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "upload_key" ON "upload" ("key");
