package pgstore

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// A schema a process of version 1 made, with an email in it, is migrated
// to version 2 by the next Open: the email is kept, claimable, and can be
// held.
func TestMigratesAVersion1Schema(t *testing.T) {
	f := newFixture(t)
	f.exec(`CREATE SCHEMA {s}`)
	f.exec(`CREATE TABLE {s}.schema_version (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())`)
	f.exec(strings.ReplaceAll(migrations[0], "{s}", f.schema))
	f.exec(`INSERT INTO {s}.schema_version (version) VALUES (1)`)
	f.exec(`INSERT INTO {s}.email (id, ord, priority, envelope, body_size) VALUES
		('old', nextval('{s}.email_ord'), 0, '{"id":"old","from":"a@example.com","to":["b@example.com"],"priority":0,"retries":0}', 1)`)
	f.exec(`INSERT INTO {s}.body (id, n, data) VALUES ('old', 0, 'x')`)
	v, err := CheckSchema(context.Background(), f.admin, f.schema)
	require.ErrorIs(t, err, ErrSchemaVersion, "a tool of version 2 does not work on version 1")
	assert.Equal(t, 1, v)

	st := f.open(nil)
	assert.Equal(t, 2, f.count(`SELECT max(version) FROM {s}.schema_version`))
	_, _, err = st.Hold(context.Background(), "old", false)
	require.NoError(t, err)
	assert.Empty(t, storetest.Claim(t, st, "w1", 10), "held")
	_, _, err = st.Release(context.Background(), "old")
	require.NoError(t, err)
	assert.Equal(t, []string{"old"}, storetest.IDs(storetest.Claim(t, st, "w1", 10)), "kept across the migration")
}

// CheckSchema changes nothing and says what it finds.
func TestCheckSchema(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v, err := CheckSchema(ctx, f.admin, f.schema)
	require.ErrorIs(t, err, ErrSchemaVersion)
	assert.Zero(t, v)
	assert.Zero(t, f.count(`SELECT count(*) FROM pg_namespace WHERE nspname = $1`, f.schema), "not created")
	_, err = CheckSchema(ctx, f.admin, "Bad;name")
	require.Error(t, err)

	f.open(nil)
	v, err = CheckSchema(ctx, f.admin, f.schema)
	require.NoError(t, err)
	assert.Equal(t, SchemaVersion, v)

	f.exec(`INSERT INTO {s}.schema_version (version) VALUES ($1)`, SchemaVersion+1)
	v, err = CheckSchema(ctx, f.admin, f.schema)
	require.ErrorIs(t, err, ErrSchemaVersion, "newer than the package")
	assert.Equal(t, SchemaVersion+1, v)
}
