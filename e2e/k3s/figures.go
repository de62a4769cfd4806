package k3s

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// JSONEnv names the file the tier's figures are written to.
const JSONEnv = "E2E_K3S_JSON"

// Figures are the tier's measurements, keyed as issue 10 lists them.
type Figures struct {
	mu sync.Mutex
	// guarded by mu
	m map[string]any
}

var figures = &Figures{m: map[string]any{}}

// Set records a figure under a dotted key's first part (e.g. "seed", "install").
func (f *Figures) Set(key string, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[key] = v
}

// SetIn records v under m[group][key].
func (f *Figures) SetIn(group, key string, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, _ := f.m[group].(map[string]any)
	if g == nil {
		g = map[string]any{}
		f.m[group] = g
	}
	g[key] = v
}

func (f *Figures) write() {
	path := os.Getenv(JSONEnv)
	if path == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := json.MarshalIndent(f.m, "", "  ")
	if err == nil {
		err = os.WriteFile(path, append(data, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "k3s: writing", path+":", err)
	}
}
