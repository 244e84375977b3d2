"""The online store (Redis) and the Flask service (DESIGN §8, §9); filled by the serving stage."""
