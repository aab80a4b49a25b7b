/* Memory maps that survive their file being truncated.
 *
 * Reading a page of a file mapping past the file's current end raises SIGBUS,
 * which kills the process: a source truncated while fitsync hashes it would
 * end the run with no message, its lock and partials left behind.
 *
 * Readers register the address range of each map they read (guard_add). On a
 * SIGBUS inside a registered range, the handler maps anonymous zero pages over
 * the rest of that range (MAP_FIXED), marks the range faulted and returns: the
 * faulting load runs again and reads zeros. The reader then sees the mark when
 * it unregisters (guard_remove) and reports the file as changed while read,
 * so what it computed from the zeros is thrown away.
 *
 * A SIGBUS anywhere else goes to the handler that was there before (Python's
 * faulthandler, say), or kills the process as it would have.
 *
 * The handler only reads the slot table and calls mmap(2): a system call, safe
 * in a signal handler on Linux. Slots are written by one thread at a time (the
 * Python caller holds the GIL); the handler may run on any thread (BLAKE3's
 * worker threads read the maps too), so each slot is published end first and
 * start last, and withdrawn start first.
 */
#ifndef FITSYNC_MAPGUARD_H
#define FITSYNC_MAPGUARD_H

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUARD_SLOTS 1024

static volatile uintptr_t guard_start[GUARD_SLOTS];
static volatile uintptr_t guard_end[GUARD_SLOTS];
static volatile sig_atomic_t guard_faulted[GUARD_SLOTS];
static struct sigaction guard_previous;
static uintptr_t guard_page;

static int guard_fill_with_zeros(int slot, uintptr_t address) {
    uintptr_t start = guard_start[slot], end = guard_end[slot];
    if (start == 0 || address < start || address >= end)
        return 0;
    uintptr_t page = address & ~(guard_page - 1);
    void *zeros = mmap((void *)page, end - page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (zeros == MAP_FAILED)
        return 0;
    guard_faulted[slot] = 1;
    return 1;
}

static void guard_on_sigbus(int signum, siginfo_t *info, void *context) {
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int slot = 0; slot < GUARD_SLOTS; slot++)
        if (guard_fill_with_zeros(slot, address))
            return;
    /* Not a guarded map: behave as if this handler were not here. */
    if ((guard_previous.sa_flags & SA_SIGINFO) && guard_previous.sa_sigaction) {
        guard_previous.sa_sigaction(signum, info, context);
        return;
    }
    if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
        guard_previous.sa_handler(signum);
        return;
    }
    signal(SIGBUS, SIG_DFL); /* the faulting load runs again and kills the process, as unguarded */
}

/* Install the handler unless it is already the one in place (a later
 * faulthandler.enable() replaces it; the next guard_add puts it back). */
static int guard_install(void) {
    struct sigaction current, ours;
    if (sigaction(SIGBUS, NULL, &current) != 0)
        return -1;
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == guard_on_sigbus)
        return 0;
    if (guard_page == 0)
        guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = guard_on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGBUS, &ours, &guard_previous) != 0)
        return -1;
    return 0;
}

/* Register [start, start + length) (rounded up to whole pages); the slot
 * number, or -1 when every slot is taken (the map is then read unguarded). */
static int guard_add(uintptr_t start, size_t length) {
    if (guard_install() != 0 || length == 0)
        return -1;
    for (int slot = 0; slot < GUARD_SLOTS; slot++) {
        if (guard_start[slot] == 0 && guard_end[slot] == 0) {
            guard_faulted[slot] = 0;
            guard_end[slot] = (start + length + guard_page - 1) & ~(guard_page - 1);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            guard_start[slot] = start;
            return slot;
        }
    }
    return -1;
}

/* Withdraw a slot; 1 if a read in its range faulted (the file shrank). */
static int guard_remove(int slot) {
    if (slot < 0 || slot >= GUARD_SLOTS)
        return 0;
    guard_start[slot] = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int faulted = guard_faulted[slot];
    guard_end[slot] = 0;
    guard_faulted[slot] = 0;
    return faulted;
}

#endif
