"""The method: models, preference data, the conditions and losses of DPO / mDPO / MCM-DPO, training."""
