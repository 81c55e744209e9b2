"""Notifications: an in-app list and an email outbox, written with the event they announce."""
