/* wait(): block until any of several connections, sockets, process
 * sentinels or raw fds is ready to read, with one poll() and one
 * monotonic deadline across EINTR retries. */
#include "mpcore.h"

#include <poll.h>

/* Below this many objects the pollfd array lives on the stack. */
#define WAIT_STACK_FDS 32

PyDoc_STRVAR(wait__doc__,
"wait(object_list, timeout=None)\n--\n\n"
"Wait until objects in `object_list` are ready to read and return the\n"
"list of those that are.  Objects are ints (file descriptors) or have a\n"
"fileno() method.  `timeout` is in seconds (None: no limit); on timeout\n"
"the result is empty.  End of file and errors count as ready.");

static PyObject *
wait_wait(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    static char *kwlist[] = {"object_list", "timeout", NULL};
    PyObject *py_objects, *py_timeout = Py_None;
    struct pollfd stackfds[WAIT_STACK_FDS];
    struct pollfd *fds = stackfds;
    PyObject *seq = NULL, *result = NULL;
    int64_t deadline;
    int r, err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:wait", kwlist,
                                     &py_objects, &py_timeout))
        return NULL;
    if (mp_deadline_from_timeout(py_timeout, &deadline) < 0)
        return NULL;
    /* A tuple copy: fileno() methods may mutate a list we are reading. */
    seq = PySequence_Tuple(py_objects);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if ((size_t)n > (size_t)INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many objects to wait for");
        goto done;
    }
    if (n > WAIT_STACK_FDS) {
        fds = PyMem_New(struct pollfd, n);
        if (fds == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int fd = PyObject_AsFileDescriptor(PyTuple_GET_ITEM(seq, i));
        if (fd < 0)
            goto done;
        fds[i].fd = fd;
        fds[i].events = POLLIN;
        fds[i].revents = 0;
    }
    for (;;) {
        int ms = mp_deadline_remaining_ms(deadline);
        Py_BEGIN_ALLOW_THREADS
        r = poll(fds, (nfds_t)n, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r >= 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done;
    }
    if (r < 0) {
        mp_set_oserror(err);
        goto done;
    }
    result = PyList_New(0);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n && r > 0; i++) {
        if (fds[i].revents == 0)
            continue;
        if (PyList_Append(result, PyTuple_GET_ITEM(seq, i)) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
done:
    if (fds != stackfds)
        PyMem_Free(fds);
    Py_XDECREF(seq);
    return result;
}

static PyMethodDef wait_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))wait_wait,
     METH_VARARGS | METH_KEYWORDS, wait__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_wait_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, wait_methods);
}
