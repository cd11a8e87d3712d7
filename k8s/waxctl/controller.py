"""The file waxctl uploads. The image's entrypoint runs the packaged flow itself
(``dataflow.flow:get_flow()``); this module names it for anyone running the file.
"""

from dataflow.flow import get_flow

flow = get_flow()
