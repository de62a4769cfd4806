package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
)

func jsonCompact(dst *bytes.Buffer, src []byte) error {
	if err := json.Compact(dst, bytes.TrimSpace(src)); err != nil {
		return fmt.Errorf("the netready config is not JSON: %v", err)
	}
	return nil
}
