package test

import (
	"strings"

	"github.com/mxrelay/mxrelay/internal/testkit"
)

// The suites' names for the helpers of internal/testkit, the same as the
// root tests'.
var (
	fast          = testkit.Fast
	newRelay      = testkit.NewRelay
	newClient     = testkit.NewClient
	ctxT          = testkit.Ctx
	msg           = testkit.Msg
	mail          = testkit.Mail
	subjects      = testkit.Subjects
	subjectOf     = testkit.SubjectOf
	countSubject  = testkit.CountSubject
	enqueueBatch  = testkit.EnqueueBatch
	results       = testkit.Results
	newTransport  = testkit.NewTransport
	newFakeRelay  = testkit.NewFakeRelay
	send          = testkit.SendFrame
	authOK        = testkit.AuthOK
	spoolFiles    = testkit.SpoolFiles
	spoolResults  = testkit.SpoolResults
	modes         = testkit.Modes
	stringsReader = strings.NewReader
)

type (
	recorder  = testkit.Recorder
	logBuffer = testkit.LogBuffer
)
