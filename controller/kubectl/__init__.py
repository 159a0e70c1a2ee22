"""``kubectl steward``: watch and govern Steward rollouts from kubectl.

kubectl runs any ``kubectl-<name>`` executable on PATH as ``kubectl <name>``; this package is
the ``kubectl-steward`` console script. Read it in this order:

- :mod:`~controller.kubectl.rows`: what a rollout and its cluster objects look like to the tool;
- :mod:`~controller.kubectl.sources`: where they come from, in order of preference: the
  ControllerService (``--controller`` / ``$STEWARD_CONTROLLER``), what the controller sees,
  with why a rollout waits; the ledger (``--server`` / ``$STEWARD_SERVER``), read and verified
  here and folded by the controller's own code (``ControllerState``), so phase, step, weight
  and valid approvals are exactly what the controller derives; the ``ModelRollout`` objects the
  controller mirrors into the cluster. The Deployments/ReplicaSets/Pods tree always comes from
  the cluster (``--kubeconfig``, ``--context``, ``-n``, as kubectl);
- :mod:`~controller.kubectl.render`: tables, the tree and the header, pure;
- :mod:`~controller.kubectl.commands`: get, list, status, history, approve/reject, kill/release,
  verify (signing runs the ``steward`` CLI's own code with the user's key file);
- :mod:`~controller.kubectl.main`: the parser and ``main`` (``python -m controller.kubectl``).
"""

PROG = "kubectl steward"
