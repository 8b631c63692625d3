"""What the network looks like: public statistics, their history, and the admin's analytics."""
