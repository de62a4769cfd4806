package testbed

import "time"

// NftCommitTime runs change (an nft invocation in n, e.g. with n.ExecInput) and returns when the
// kernel committed it: the arrival of the NFT_MSG_NEWGEN notification that ends every nf_tables
// transaction in n, read by a listener in n while change runs (the nft process exits several
// milliseconds later). Only one nf_tables change may run in n meanwhile: serialize callers.
func (n *Netns) NftCommitTime(change func() error) (time.Time, error) {
	return nftCommitTime(n, change)
}
