/* The node-side version the broker checks (`broker node status` shows nodes still on an
 * older hook): 1 was the Python hook under pam_exec, 2 is pam_broker.so. */
#ifndef BK_VERSION_H
#define BK_VERSION_H
#define BK_HOOK_VERSION "2"
#endif
