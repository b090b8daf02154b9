package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema's versions: migrations[v-1] takes the schema
// from version v-1 to v. They are applied in order, each in the
// transaction that records it in schema_version, under an advisory lock,
// so that processes starting together migrate once. A released migration
// is never changed: a change is a new one. docs/postgres.md describes the
// schema they make.
var migrations = []string{
	// 1: emails, their bodies, the notifications.
	`
CREATE TABLE {s}.email (
	id            text PRIMARY KEY,
	idem_key      text UNIQUE,
	ord           bigint,
	priority      smallint NOT NULL,
	envelope      jsonb NOT NULL,
	meta          bytea,
	body_size     bigint NOT NULL DEFAULT 0,
	queued_at     timestamptz NOT NULL DEFAULT now(),
	not_before    timestamptz NOT NULL DEFAULT '-infinity',
	attempt       bigint NOT NULL DEFAULT 0,
	owner         text,
	lease_expires timestamptz,
	ends          integer NOT NULL DEFAULT 0,
	progress      jsonb,
	cancel        text,
	finished_at   timestamptz,
	result        jsonb
);
CREATE SEQUENCE {s}.email_ord;
CREATE INDEX email_claim ON {s}.email (priority DESC, ord) WHERE finished_at IS NULL;
CREATE INDEX email_due ON {s}.email (not_before) WHERE finished_at IS NULL AND owner IS NULL;
CREATE INDEX email_lease ON {s}.email (lease_expires) WHERE finished_at IS NULL AND owner IS NOT NULL;
CREATE INDEX email_finished ON {s}.email (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE {s}.body (
	id   text NOT NULL REFERENCES {s}.email (id) ON DELETE CASCADE,
	n    integer NOT NULL,
	data bytea NOT NULL,
	PRIMARY KEY (id, n)
);
ALTER TABLE {s}.body ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE FUNCTION {s}.notify_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify(TG_TABLE_SCHEMA || '.ready', '');
	RETURN NULL;
END $$;
CREATE TRIGGER email_ready AFTER INSERT OR UPDATE OF owner, not_before, ord ON {s}.email
	FOR EACH ROW WHEN (NEW.finished_at IS NULL AND NEW.owner IS NULL AND NEW.ord IS NOT NULL)
	EXECUTE FUNCTION {s}.notify_ready();

CREATE FUNCTION {s}.notify_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify(TG_TABLE_SCHEMA || '.result',
		CASE WHEN octet_length(NEW.id) <= 7000 THEN NEW.id ELSE '' END);
	RETURN NULL;
END $$;
CREATE TRIGGER email_result AFTER UPDATE OF finished_at ON {s}.email
	FOR EACH ROW WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
	EXECUTE FUNCTION {s}.notify_result();
`,
	// 2: emails on hold (Admin.Hold). A held row is never claimed; taking
	// it off hold notifies the claimers. The claim index is kept as it
	// is: held rows are few, and a claim steps over them.
	`
ALTER TABLE {s}.email ADD COLUMN held_at timestamptz;
DROP TRIGGER email_ready ON {s}.email;
CREATE TRIGGER email_ready AFTER INSERT OR UPDATE OF owner, not_before, ord, held_at ON {s}.email
	FOR EACH ROW WHEN (NEW.finished_at IS NULL AND NEW.owner IS NULL AND NEW.ord IS NOT NULL AND NEW.held_at IS NULL)
	EXECUTE FUNCTION {s}.notify_ready();
`,
}

// SchemaVersion is the version of the schema this package makes.
const SchemaVersion = 2

// ErrSchemaVersion is matched by the error of CheckSchema when the
// schema is missing or at another version than SchemaVersion.
var ErrSchemaVersion = errors.New("mxrelay: pgstore: the schema is not at this package's version")

// CheckSchema checks, without changing anything, that schema exists
// and is at SchemaVersion, for a tool that must not create or migrate it
// (Open does both): it returns the version found, and an error matching
// ErrSchemaVersion when it is not this package's (0: no such schema).
func CheckSchema(ctx context.Context, pool *pgxpool.Pool, schema string) (int, error) {
	if !schemaName.MatchString(schema) {
		return 0, fmt.Errorf("mxrelay: pgstore: schema %q: lower-case letters, digits and _ only, at most 48", schema)
	}
	table := pgx.Identifier{schema, "schema_version"}.Sanitize()
	var exists bool
	var have int
	err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists)
	if err == nil && exists {
		err = pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+table).Scan(&have)
	}
	if err != nil {
		return 0, fail("check schema", err)
	}
	switch {
	case !exists:
		return 0, fmt.Errorf("%w: no schema %s (or not mxrelay's)", ErrSchemaVersion, schema)
	case have != SchemaVersion:
		return have, fmt.Errorf("%w: schema %s is at version %d, this package's is %d", ErrSchemaVersion, schema, have, SchemaVersion)
	}
	return have, nil
}

// migrate brings the schema to SchemaVersion.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fail("migrate", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// One migrating process per schema at a time; the others wait here
	// and then find the work done.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "mxrelay.migrate."+s.schema); err != nil {
		return fail("migrate", err)
	}
	if _, err := tx.Exec(ctx, s.sql(`CREATE SCHEMA IF NOT EXISTS {s}`)); err != nil {
		return fail("migrate", err)
	}
	if _, err := tx.Exec(ctx, s.sql(`CREATE TABLE IF NOT EXISTS {s}.schema_version (
		version integer PRIMARY KEY,
		applied timestamptz NOT NULL DEFAULT now())`)); err != nil {
		return fail("migrate", err)
	}
	var have int
	if err := tx.QueryRow(ctx, s.sql(`SELECT coalesce(max(version), 0) FROM {s}.schema_version`)).Scan(&have); err != nil {
		return fail("migrate", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("mxrelay: pgstore: schema %s is at version %d, newer than this package's %d", s.schema, have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		if _, err := tx.Exec(ctx, s.sql(migrations[v-1])); err != nil {
			return fail(fmt.Sprintf("migration %d", v), err)
		}
		if _, err := tx.Exec(ctx, s.sql(`INSERT INTO {s}.schema_version (version) VALUES ($1)`), v); err != nil {
			return fail("migrate", err)
		}
	}
	return fail("migrate", tx.Commit(ctx))
}
