"""Learning from the traffic the service logged (`RANK_LOG_DIR`): sessions joined from impression and feedback
records (`sessions`), how likely users are to look at each position (`propensity`), and the inverse-propensity
weighted click labels that `make train FEEDBACK=dir` trains on (`labels`)."""
