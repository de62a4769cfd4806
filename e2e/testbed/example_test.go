package testbed_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// A plain program (the demo, the benchmark) uses Start and Close; tests use testbed.New(t), which
// skips without root and closes the bed when the test ends.
func Example() {
	ctx := context.Background()
	b, err := testbed.Start(ctx, testbed.Options{Plugins: testbed.WithNetready})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close() // removes the netns, servers and files, whatever happened

	netready := fmt.Sprintf(`{"type":"netready","probes":[%q],"timeout":"10s"}`, testbed.ProbeDB)
	list, err := b.ConfList(testbed.K3sConflist("1.0.0", netready))
	if err != nil {
		log.Fatal(err)
	}

	// The path to the db opens 500 ms from now; ADD should return right after.
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		log.Fatal(err)
	}
	opened := fault.OpenAfter(500 * time.Millisecond)

	pod, err := b.NewPod(ctx)
	if err != nil {
		log.Fatal(err)
	}
	res, err := b.Add(ctx, list, pod)
	returned := time.Now()
	if err != nil {
		log.Fatal(err)
	}
	o := <-opened
	fmt.Println("pod", res.IPs[0].Address.String(), "ADD returned", returned.Sub(o.At), "after the path opened")

	c, err := pod.Dial(ctx, "tcp", testbed.DBTCP.String()) // a socket in the pod's netns
	if err != nil {
		log.Fatal(err)
	}
	c.Close()
	if err := b.Del(ctx, list, pod); err != nil {
		log.Fatal(err)
	}
}
