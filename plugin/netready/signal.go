package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// endOnSignal is a podcheck.End: SIGTERM or SIGINT ends the wait, which then
// answers, rather than dying without a word. The runtime (or an operator)
// stops a plugin that way.
//
// It is started only once the quick first round found something unmet:
// installing a handler starts a thread of its own, a cost (about 0.5 ms on
// this project's VM) that a pod whose network works should not pay, and a
// signal in those first milliseconds meets the default action, as with any
// plugin.
func endOnSignal(_ context.Context, end context.CancelCauseFunc) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case s := <-sig:
			end(fmt.Errorf("%v signal received", s))
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		<-finished
	}
}
