"""Stand-ins for the services around the controller: Observer, ModelFactory and Engine.

For tests, demos and trying the controller without the real services. They
speak both dialects exactly as the real services do (each field is written out in
``dataflow.domain.dialects``; what the stand-ins write, in ``dataflow.sim.services``).
"""
