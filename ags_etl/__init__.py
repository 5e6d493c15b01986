"""ags_etl: ETL for ArcGIS REST feature services.

Every feature exactly once or a loud error; outputs that appear only when complete.
"""

__version__ = "0.1.0"
