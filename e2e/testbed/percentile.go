package testbed

import (
	"math"
	"slices"
)

// Percentile is the nearest-rank percentile p (0 < p <= 100) of xs: the
// smallest value with at least p% of xs at or below it, always one of xs.
// It is 0 for no values (JSON has no NaN); report the count beside it.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
