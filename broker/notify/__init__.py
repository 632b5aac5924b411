"""Notifications: what goes out of the broker to people and receivers (request notices to
approvers and requesters), queued in the store and sent by the daemon's notifier thread."""
