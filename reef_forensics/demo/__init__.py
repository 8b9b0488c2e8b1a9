"""`reef-forensics demo`: small models trained on the spot, registered, screened and verified."""
