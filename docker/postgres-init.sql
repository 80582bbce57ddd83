-- One database per gateway of docker/compose.yaml, owned by the role POSTGRES_USER creates (comity).
-- The postgres image runs this once, when its data volume is empty.
CREATE DATABASE comity_ar OWNER comity;
CREATE DATABASE comity_au OWNER comity;
