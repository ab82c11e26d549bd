/* vfork + exec of a fresh interpreter for the spawn start method.
 *
 * Everything the child needs (argv, the sorted list of fds to keep) is
 * built in the parent before vfork().  Between vfork() and execv() the
 * child calls only async-signal-safe functions and reports a failed exec
 * as a raw errno over a close-on-exec pipe; the parent turns it into
 * OSError.  Python code never runs in the child, so no PyOS_*Fork hooks.
 *
 * Why vfork: fork() copies the parent's page tables and the exec then
 * tears the copy down, on the start's critical path and in proportion to
 * the parent's size (~16 ms against ~0.4 ms for the stdlib's vfork-based
 * spawn on a loaded 2-core machine, ~90 ms against 0.3 ms for a 200 MB
 * parent).  The price is care: until it execs, the child runs on our
 * memory and stack, so it never returns from vfork_exec(), never touches
 * the heap, and no signal handler of ours may run in it (the parent
 * blocks every signal around vfork(); the child resets caught signals to
 * SIG_DFL, as exec would, before unblocking them).
 */
#include "mpcore.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int
cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Close fds in [lo, hi].  Async-signal-safe. */
static void
child_close_range(int lo, int hi, int maxfd)
{
    if (lo > hi)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned int)lo, (unsigned int)hi, 0) == 0)
        return;
#endif
    /* Kernels before 5.9: close one by one up to the rlimit. */
    if (hi > maxfd)
        hi = maxfd;
    for (int fd = lo; fd <= hi; fd++)
        close(fd);
}

/* The child side.  `keep` is sorted and holds every fd >= 3 to survive
 * (the error pipe among them; it is close-on-exec). */
_Noreturn static void
child_exec(const char *path, char *const argv[], const int *keep, int nkeep,
           int errpipe, int maxfd)
{
    int err;
    sigset_t none;

    /* Every signal is blocked here (see the parent).  Handlers of ours
     * must not run in a child that shares our memory: back to SIG_DFL, as
     * exec would do anyway (ignored signals stay ignored). */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) != 0 || sa.sa_handler == SIG_IGN
                || sa.sa_handler == SIG_DFL)
            continue;
        sa.sa_handler = SIG_DFL;
        sa.sa_flags = 0;
        sigemptyset(&sa.sa_mask);
        (void)sigaction(sig, &sa, NULL);
    }
    /* The interpreter we exec starts with no blocked signals, whatever
     * thread of the parent asked for it. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int lo = 3;
    for (int i = 0; i < nkeep; i++) {
        int fd = keep[i];
        if (fd < lo)
            continue;
        child_close_range(lo, fd - 1, maxfd);
        lo = fd + 1;
        if (fd != errpipe) {
            int flags = fcntl(fd, F_GETFD);
            if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
                goto fail;
        }
    }
    child_close_range(lo, INT32_MAX, maxfd);
    execv(path, argv);
fail:
    err = errno;
    while (write(errpipe, &err, sizeof(err)) < 0 && errno == EINTR)
        ;
    _exit(127);
}

/* The child of vfork() runs on this frame's caller's stack until it
 * execs or exits: it must never return from here.  Kept out of line so
 * that the parent's own frame holds nothing the child could clobber. */
__attribute__((noinline)) static pid_t
vfork_exec(const char *path, char *const argv[], const int *keep, int nkeep,
           int errpipe, int maxfd)
{
    pid_t pid = vfork();
    if (pid == 0)
        child_exec(path, argv, keep, nkeep, errpipe, maxfd);
    return pid;
}

/* Converts a sequence of path-like objects into a NULL-terminated argv.
 * Returns the list of bytes objects that own the strings (a new reference)
 * and stores a PyMem array in *argv_out; NULL with an exception set. */
static PyObject *
build_argv(PyObject *args, char ***argv_out)
{
    PyObject *seq = PySequence_Fast(args, "args must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *owners = PyList_New(0);
    char **argv = PyMem_New(char *, n + 1);
    if (owners == NULL || argv == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &b))
            goto error;
        if (PyList_Append(owners, b) < 0) {
            Py_DECREF(b);
            goto error;
        }
        Py_DECREF(b);
        argv[i] = PyBytes_AS_STRING(b);
    }
    argv[n] = NULL;
    Py_DECREF(seq);
    *argv_out = argv;
    return owners;
error:
    Py_DECREF(seq);
    Py_XDECREF(owners);
    PyMem_Free(argv);
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    return NULL;
}

PyDoc_STRVAR(spawnv_passfds__doc__,
"spawnv_passfds(path, args, passfds, /)\n--\n\n"
"Fork and exec `path` with argument list `args`, keeping open only the\n"
"standard streams and the file descriptors in `passfds` (made inheritable\n"
"in the child only).  Returns the child's pid.  A failed exec raises\n"
"OSError in the caller and leaves no zombie behind.");

static PyObject *
spawn_spawnv_passfds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    PyObject *py_path = NULL, *owners = NULL, *fdseq = NULL;
    char **argv = NULL;
    int *keep = NULL;
    int errpipe[2] = {-1, -1};
    PyObject *result = NULL;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "spawnv_passfds() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &py_path))
        return NULL;
    owners = build_argv(args[1], &argv);
    if (owners == NULL)
        goto done;
    if (argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "args must not be empty");
        goto done;
    }
    fdseq = PySequence_Fast(args[2], "passfds must be a sequence of ints");
    if (fdseq == NULL)
        goto done;
    Py_ssize_t nfds = PySequence_Fast_GET_SIZE(fdseq);
    keep = PyMem_New(int, nfds + 1);
    if (keep == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nfds; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fdseq, i));
        if (fd == -1 && PyErr_Occurred())
            goto done;
        if (fd < 0 || fd > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "bad file descriptor in passfds: %ld", fd);
            goto done;
        }
        keep[i] = (int)fd;
    }
    if (pipe2(errpipe, O_CLOEXEC) < 0) {
        mp_set_oserror(errno);
        goto done;
    }
    keep[nfds] = errpipe[1];
    qsort(keep, (size_t)nfds + 1, sizeof(int), cmp_int);

    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > INT32_MAX)
        maxfd = 65536;

    /* No handler of ours may run in the child while it shares our memory:
     * block everything until vfork() returns (the child is then gone to
     * its exec, or has exited). */
    sigset_t all, saved;
    sigfillset(&all);
    int mask_err = pthread_sigmask(SIG_BLOCK, &all, &saved);
    if (mask_err != 0) {
        mp_set_oserror(mask_err);
        goto done;
    }
    pid_t pid = vfork_exec(PyBytes_AS_STRING(py_path), argv, keep,
                           (int)nfds + 1, errpipe[1], (int)maxfd);
    int fork_err = errno;
    (void)pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (pid < 0) {
        mp_set_oserror(fork_err);
        goto done;
    }
    close(errpipe[1]);
    errpipe[1] = -1;

    /* EOF on the error pipe means the exec succeeded. */
    int child_errno = 0, err = 0, async_err = 0;
    ssize_t got;
    MP_RETRY_EINTR(got, read(errpipe[0], &child_errno, sizeof(child_errno)),
                   err, async_err);
    if (got != 0) {
        /* Exec failed (the child is exiting with 127), or we were
         * interrupted before knowing: never leave an unknown child behind. */
        int status;
        pid_t r;
        if (got != (ssize_t)sizeof(child_errno))
            kill(pid, SIGKILL);
        do {
            Py_BEGIN_ALLOW_THREADS
            r = waitpid(pid, &status, 0);
            Py_END_ALLOW_THREADS
        } while (r < 0 && errno == EINTR);
        if (async_err)
            goto done;
        if (got < 0) {
            mp_set_oserror(err);
        }
        else if (got != (ssize_t)sizeof(child_errno)) {
            PyErr_SetString(PyExc_OSError, "spawn: short report from child");
        }
        else {
            errno = child_errno;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
        }
        goto done;
    }
    result = PyLong_FromLong((long)pid);

done:
    if (errpipe[0] >= 0)
        close(errpipe[0]);
    if (errpipe[1] >= 0)
        close(errpipe[1]);
    PyMem_Free(keep);
    PyMem_Free(argv);
    Py_XDECREF(fdseq);
    Py_XDECREF(owners);
    Py_XDECREF(py_path);
    return result;
}

static PyMethodDef spawn_methods[] = {
    {"spawnv_passfds", (PyCFunction)(void (*)(void))spawn_spawnv_passfds,
     METH_FASTCALL, spawnv_passfds__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_spawn_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, spawn_methods);
}
