"""What the deployables agree on: the event model, topology, configuration, versions, status, logging; imports
none of the other packages (broker/, store/ and the deployables import it)."""
