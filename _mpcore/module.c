/* _mpcore: the C core of multiprocessing_c.
 *
 * This file only wires the concept files together: multi-phase init
 * (PEP 489), the per-module state they share, and its GC hooks.
 */
#include "mpcore.h"

PyObject *
mp_set_oserror(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static int
mpcore_exec(PyObject *module)
{
    mp_state *st = mp_get_state(module);
    if (mp_spawn_init(module, st) < 0)
        return -1;
    if (mp_heap_init(module, st) < 0)
        return -1;
    if (mp_shm_init(module, st) < 0)
        return -1;
    if (mp_connection_init(module, st) < 0)
        return -1;
    if (mp_wait_init(module, st) < 0)
        return -1;
    if (mp_fdpass_init(module, st) < 0)
        return -1;
    if (mp_semaphore_init(module, st) < 0)
        return -1;
    if (mp_queue_init(module, st) < 0)
        return -1;
    if (mp_pickling_init(module, st) < 0)
        return -1;
    if (mp_forkserver_init(module, st) < 0)
        return -1;
    return 0;
}

static int
mpcore_traverse(PyObject *module, visitproc visit, void *arg)
{
    mp_state *st = mp_get_state(module);
    Py_VISIT(st->SemLockType);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->ArenaType);
    Py_VISIT(st->BlockType);
    Py_VISIT(st->HeapType);
    Py_VISIT(st->pickle_dumps);
    Py_VISIT(st->pickle_loads);
    return 0;
}

static int
mpcore_clear(PyObject *module)
{
    mp_state *st = mp_get_state(module);
    Py_CLEAR(st->SemLockType);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->ArenaType);
    Py_CLEAR(st->BlockType);
    Py_CLEAR(st->HeapType);
    Py_CLEAR(st->pickle_dumps);
    Py_CLEAR(st->pickle_loads);
    return 0;
}

static void
mpcore_free(void *module)
{
    (void)mpcore_clear((PyObject *)module);
}

static PyModuleDef_Slot mpcore_slots[] = {
    {Py_mod_exec, (void *)mpcore_exec},
    {0, NULL},
};

PyDoc_STRVAR(mpcore__doc__,
"The C core of multiprocessing_c: semaphores, connections, the shared\n"
"heap, process spawning and the fork server.");

PyModuleDef mp_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "multiprocessing_c._mpcore",
    .m_doc = mpcore__doc__,
    .m_size = sizeof(mp_state),
    .m_slots = mpcore_slots,
    .m_traverse = mpcore_traverse,
    .m_clear = mpcore_clear,
    .m_free = mpcore_free,
};

PyMODINIT_FUNC
PyInit__mpcore(void)
{
    return PyModuleDef_Init(&mp_module_def);
}
