package mxrelay_test

import "github.com/mxrelay/mxrelay/internal/testkit"

// The root tests' names for the helpers of internal/testkit, which the
// suites in test/ share with them.
var (
	fast         = testkit.Fast
	newRelay     = testkit.NewRelay
	newClient    = testkit.NewClient
	ctxT         = testkit.Ctx
	msg          = testkit.Msg
	mail         = testkit.Mail
	subjects     = testkit.Subjects
	subjectOf    = testkit.SubjectOf
	countSubject = testkit.CountSubject
	enqueueBatch = testkit.EnqueueBatch
	results      = testkit.Results
	newTransport = testkit.NewTransport
	newFakeRelay = testkit.NewFakeRelay
	send         = testkit.SendFrame
	authOK       = testkit.AuthOK
	spoolFiles   = testkit.SpoolFiles
	spoolResults = testkit.SpoolResults
	modes        = testkit.Modes
	bubble       = testkit.Bubble
	newUpstream  = testkit.NewUpstream
	clientOpts   = testkit.ClientOptions
)

type (
	recorder  = testkit.Recorder
	logBuffer = testkit.LogBuffer
)
