/* The queues' data path: one C call moves one pickled frame through a
 * pipe, with the cross-process lock taken and released around it.
 *
 * Frames are the connection format: a 4-byte big-endian length, or -1
 * followed by an 8-byte length for payloads of 2 GiB - 1 and more.
 *
 * Both calls keep a frame whole even when a signal handler raises in
 * the middle of one: once the first byte of a frame has moved, the rest
 * moves too and the exception is raised afterwards, so the pipe never
 * holds half a frame that would desynchronise every later reader.
 */
#include "mpcore.h"

#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#define FRAME_SMALL_MAX 0x7fffffffLL

/* Builds the header for `len` payload bytes; returns its size. */
static size_t
queue_header(char *hdr, Py_ssize_t len)
{
    if ((long long)len < FRAME_SMALL_MAX) {
        uint32_t n = (uint32_t)len;
        hdr[0] = (char)(n >> 24); hdr[1] = (char)(n >> 16);
        hdr[2] = (char)(n >> 8); hdr[3] = (char)n;
        return 4;
    }
    uint64_t n = (uint64_t)len;
    memset(hdr, 0xff, 4);
    for (int i = 0; i < 8; i++)
        hdr[4 + i] = (char)(n >> (56 - 8 * i));
    return 12;
}

/* Waits (GIL released) until `fd` is ready for `events` or `deadline`.
 * Returns 1 ready, 0 timed out, -1 with an exception set. */
static int
queue_poll(int fd, short events, int64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
    int res, err;
    for (;;) {
        int ms = mp_deadline_remaining_ms(deadline);
        Py_BEGIN_ALLOW_THREADS
        res = poll(&pfd, 1, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (res > 0)
            return 1;
        if (res == 0)
            return 0;
        if (err != EINTR) {
            mp_set_oserror(err);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* Called on EINTR mid-frame: runs the signal handlers once, keeping the
 * first exception aside in *pending (a new reference) to raise later. */
static void
queue_defer_signals(PyObject **pending)
{
    if (*pending == NULL && PyErr_CheckSignals() < 0) {
#if PY_VERSION_HEX >= 0x030C0000
        *pending = PyErr_GetRaisedException();
#else
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (tb != NULL)
            PyException_SetTraceback(v, tb);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        *pending = v;
#endif
    }
}

static void
queue_restore(PyObject *pending)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending);
#else
    PyErr_SetObject((PyObject *)Py_TYPE(pending), pending);
    Py_DECREF(pending);
#endif
}

/* Reads exactly `len` bytes into `buf` (GIL released while blocked).
 * `started` says whether part of the frame is already consumed: only
 * before that may a signal handler's exception abort the read.
 * Returns 0, or -1 with an exception set (EOFError at end of file). */
static int
queue_read_exact(int fd, char *buf, size_t len, int started, PyObject **pending)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = read(fd, buf + got, len - got);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n > 0) {
            got += (size_t)n;
            started = 1;
            continue;
        }
        if (n == 0) {
            PyErr_SetString(PyExc_EOFError, "queue pipe closed mid-frame");
            if (!started)
                PyErr_SetNone(PyExc_EOFError);
            return -1;
        }
        if (err == EINTR) {
            if (!started) {
                if (PyErr_CheckSignals() < 0)
                    return -1;
            }
            else {
                queue_defer_signals(pending);
            }
            continue;
        }
        mp_set_oserror(err);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(queue_recv__doc__,
"queue_recv(fd, rlock, sem, timeout, /)\n--\n\n"
"Take the next frame's payload from the pipe `fd` as bytes, holding the\n"
"SemLock `rlock` while reading and releasing the SemLock `sem` (or None)\n"
"after.  Returns None if `timeout` (None: no limit) expires first.");

static PyObject *
queue_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    mp_state *st = mp_get_state(module);
    PyObject *rlock, *sem, *result = NULL, *pending = NULL;
    int64_t deadline;
    int fd, r;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "queue_recv() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    rlock = args[1];
    sem = args[2];
    if (mp_semlock_check(rlock, st) < 0)
        return NULL;
    if (sem != Py_None && mp_semlock_check(sem, st) < 0)
        return NULL;
    if (mp_deadline_from_timeout(args[3], &deadline) < 0)
        return NULL;

    r = mp_semlock_acquire_until(rlock, deadline);
    if (r <= 0)
        {
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }

    /* Wait for data while nothing is consumed: a timeout or Ctrl-C here
     * leaves the pipe as it was.  With no deadline the header's read
     * itself waits (one syscall less; a signal there consumes nothing). */
    r = deadline == MP_FOREVER ? 1 : queue_poll(fd, POLLIN, deadline);
    if (r <= 0) {
        if (r == 0) {
            Py_INCREF(Py_None);
            result = Py_None;
        }
        goto done;
    }

    unsigned char hdr[8];
    if (queue_read_exact(fd, (char *)hdr, 4, 0, &pending) < 0)
        goto done;
    int32_t small = (int32_t)(((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
                              ((uint32_t)hdr[2] << 8) | (uint32_t)hdr[3]);
    uint64_t len;
    if (small == -1) {
        if (queue_read_exact(fd, (char *)hdr, 8, 1, &pending) < 0)
            goto done;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | hdr[i];
    }
    else if (small < 0) {
        PyErr_SetString(PyExc_OSError, "corrupt frame header on queue pipe");
        goto done;
    }
    else {
        len = (uint64_t)small;
    }
    if (len > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "queue frame too large");
        goto done;
    }
    /* The bytes object is ours alone until returned: reading into its
     * buffer with the GIL released touches no shared Python state. */
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (result == NULL)
        goto done;
    if (queue_read_exact(fd, PyBytes_AS_STRING(result), (size_t)len, 1,
                         &pending) < 0) {
        Py_CLEAR(result);
        goto done;
    }
    if (sem != Py_None && mp_semlock_release(sem) < 0)
        Py_CLEAR(result);

done:
    if (mp_semlock_release(rlock) < 0)
        Py_CLEAR(result);
    if (pending != NULL) {
        /* The frame was read whole; the interrupted caller loses it, but
         * every later reader still finds frame boundaries intact. */
        Py_CLEAR(result);
        if (PyErr_Occurred())
            Py_DECREF(pending);
        else
            queue_restore(pending);
    }
    return result;
}

/* Writes all of iov (GIL released while blocked; waits for room when the
 * fd is non-blocking).  `written` bytes are already out.  Signals are
 * deferred once a byte has gone.  Returns 0 or -1 with an exception. */
static int
queue_write_all(int fd, struct iovec *iov, int iovcnt, size_t written,
                PyObject **pending)
{
    for (;;) {
        while (iovcnt > 0 && written >= iov[0].iov_len) {
            written -= iov[0].iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt == 0)
            return 0;
        iov[0].iov_base = (char *)iov[0].iov_base + written;
        iov[0].iov_len -= written;
        written = 0;
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = writev(fd, iov, iovcnt);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            written = (size_t)n;
            continue;
        }
        if (err == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT, .revents = 0};
            Py_BEGIN_ALLOW_THREADS
            (void)poll(&pfd, 1, -1);
            Py_END_ALLOW_THREADS
            continue;
        }
        if (err == EINTR) {
            queue_defer_signals(pending);
            continue;
        }
        mp_set_oserror(err);
        return -1;
    }
}

PyDoc_STRVAR(queue_send__doc__,
"queue_send(fd, wlock, data, block, /)\n--\n\n"
"Write `data` (bytes-like) to the pipe `fd` as one frame while holding the\n"
"SemLock `wlock`.  With `block` true, wait for the lock and for room and\n"
"return the frame's size.  Otherwise make one non-blocking attempt and\n"
"return -1 if the lock is busy, else the bytes written: the whole frame\n"
"(lock released), 0 (lock released), or a part, in which case `wlock`\n"
"stays held for the caller to finish the frame and release it.");

static PyObject *
queue_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    mp_state *st = mp_get_state(module);
    PyObject *wlock, *pending = NULL, *result = NULL;
    Py_buffer view;
    char hdr[12];
    int fd, block, r;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "queue_send() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    wlock = args[1];
    if (mp_semlock_check(wlock, st) < 0)
        return NULL;
    block = PyObject_IsTrue(args[3]);
    if (block < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;

    size_t hlen = queue_header(hdr, view.len);
    size_t total = hlen + (size_t)view.len;
    struct iovec iov[2] = {
        {.iov_base = hdr, .iov_len = hlen},
        {.iov_base = view.buf, .iov_len = (size_t)view.len},
    };

    r = mp_semlock_acquire_until(wlock, block ? MP_FOREVER : mp_now_ns());
    if (r < 0)
        goto done;
    if (r == 0) {
        result = PyLong_FromLong(-1);
        goto done;
    }
    if (block) {
        if (queue_write_all(fd, iov, 2, 0, &pending) == 0)
            result = PyLong_FromSize_t(total);
        if (mp_semlock_release(wlock) < 0)
            Py_CLEAR(result);
        goto done;
    }

    /* One attempt on the (non-blocking) fd: a pipe with room takes the
     * frame at once; a full one takes part of it or nothing. */
    ssize_t n;
    int err, async_err;
    MP_RETRY_EINTR(n, writev(fd, iov, 2), err, async_err);
    if (n < 0 && !async_err && (err == EAGAIN || err == EWOULDBLOCK))
        n = 0;
    if (n < 0) {
        if (!async_err)
            mp_set_oserror(err);
        (void)mp_semlock_release(wlock);
        goto done;
    }
    if ((size_t)n == total || n == 0) {
        if (mp_semlock_release(wlock) < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(n);

done:
    PyBuffer_Release(&view);
    if (pending != NULL) {
        /* The frame went out whole; now the deferred exception. */
        Py_CLEAR(result);
        if (PyErr_Occurred())
            Py_DECREF(pending);
        else
            queue_restore(pending);
    }
    return result;
}

static PyMethodDef queue_functions[] = {
    {"queue_recv", (PyCFunction)(void (*)(void))queue_recv, METH_FASTCALL,
     queue_recv__doc__},
    {"queue_send", (PyCFunction)(void (*)(void))queue_send, METH_FASTCALL,
     queue_send__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_queue_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, queue_functions);
}
