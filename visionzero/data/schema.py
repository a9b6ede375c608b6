"""Column names: the NYC Open Data CSV export is canonical; the SODA API's names map onto it."""

from __future__ import annotations

COUNT_COLUMNS = [
    "NUMBER OF PERSONS INJURED",
    "NUMBER OF PERSONS KILLED",
    "NUMBER OF PEDESTRIANS INJURED",
    "NUMBER OF PEDESTRIANS KILLED",
    "NUMBER OF CYCLIST INJURED",
    "NUMBER OF CYCLIST KILLED",
    "NUMBER OF MOTORIST INJURED",
    "NUMBER OF MOTORIST KILLED",
]
FACTOR_COLUMNS = [f"CONTRIBUTING FACTOR VEHICLE {i}" for i in range(1, 6)]
VEHICLE_COLUMNS = [f"VEHICLE TYPE CODE {i}" for i in range(1, 6)]
CSV_COLUMNS = [
    "CRASH DATE",
    "CRASH TIME",
    "BOROUGH",
    "ZIP CODE",
    "LATITUDE",
    "LONGITUDE",
    "LOCATION",
    "ON STREET NAME",
    "CROSS STREET NAME",
    "OFF STREET NAME",
    *COUNT_COLUMNS,
    *FACTOR_COLUMNS,
    "COLLISION_ID",
    *VEHICLE_COLUMNS,
]

# SODA field -> CSV column. Note the API's own inconsistency: vehicle_type_code1/2 but _3/_4/_5.
API_TO_CSV = {
    "crash_date": "CRASH DATE",
    "crash_time": "CRASH TIME",
    "borough": "BOROUGH",
    "zip_code": "ZIP CODE",
    "latitude": "LATITUDE",
    "longitude": "LONGITUDE",
    "on_street_name": "ON STREET NAME",
    "cross_street_name": "CROSS STREET NAME",
    "off_street_name": "OFF STREET NAME",
    **{f"number_of_{c.split()[2].lower()}_{c.split()[3].lower()}": c for c in COUNT_COLUMNS},
    **{f"contributing_factor_vehicle_{i}": f"CONTRIBUTING FACTOR VEHICLE {i}" for i in range(1, 6)},
    "collision_id": "COLLISION_ID",
    "vehicle_type_code1": "VEHICLE TYPE CODE 1",
    "vehicle_type_code2": "VEHICLE TYPE CODE 2",
    "vehicle_type_code_3": "VEHICLE TYPE CODE 3",
    "vehicle_type_code_4": "VEHICLE TYPE CODE 4",
    "vehicle_type_code_5": "VEHICLE TYPE CODE 5",
}

# Typed dataset columns written to data/crashes/YYYY-MM.parquet.
COUNT_FIELDS = {c: "_".join(c.split()[2:]).lower() for c in COUNT_COLUMNS}  # persons_injured, ...

# Latitude/longitude box of New York City inside which a crash counts as geocoded; serving refuses
# points outside it.
NYC_BOX = {"lat_min": 40.45, "lat_max": 40.95, "lon_min": -74.30, "lon_max": -73.65}
