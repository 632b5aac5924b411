"""Node provisioning: bootstrap puts the node program, PAM blocks, keys and the recording
tunnel on a node, so it sits above fleet (SSH), policy (zones) and sessions (the carrier)."""
