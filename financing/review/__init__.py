"""The coordinators' review queues: submitted and resubmitted projects, matches, pledges and disputes."""
