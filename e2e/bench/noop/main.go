// Command noop is the least a chained CNI plugin does: parse its config and prevResult, print
// prevResult in the list's version. The benchmark chains it in netready's place to measure what
// any chained Go plugin costs to exec, the floor under netready's overhead.
//
// With "waitFIFO" in its config it first reads that FIFO until EOF: the blocked fanout's floor,
// many chained plugins held and released at once, as netready's waiting ADDs are by an opening.
package main

import (
	"encoding/json"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:   add,
		Del:   func(*skel.CmdArgs) error { return nil },
		Check: func(*skel.CmdArgs) error { return nil },
	}, version.All, "noop: a chained plugin that passes prevResult through")
}

func add(args *skel.CmdArgs) error {
	var conf struct {
		types.NetConf
		WaitFIFO string `json:"waitFIFO"`
	}
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return err
	}
	if conf.WaitFIFO != "" {
		f, err := os.Open(conf.WaitFIFO)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, f) // until the bench closes the last writer
		f.Close()
	}
	if conf.RawPrevResult == nil { // alone in its list (the floor): nothing to pass on
		return types.PrintResult(&current.Result{CNIVersion: current.ImplementedSpecVersion}, conf.CNIVersion)
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return err
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	return types.PrintResult(prev, conf.CNIVersion)
}
