"""Pure status derivation: what the children look like in, the resource's status out.

No I/O here. ``conditions`` keeps metav1.Condition lists honest (transition times move only when a
status changes; every condition carries observedGeneration); ``pods`` summarises pods and Jobs as
the indexes store them and names what is wrong with a pod; one module per kind derives its status
(``trainingjob``), with the events that a change deserves.
"""
