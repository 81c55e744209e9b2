"""Exchange rates that coordinators keep, used to convert pledges into a need's currency."""
