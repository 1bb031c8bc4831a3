-- Disposals the vault holds pending destruction (its configured window):
-- when the window ends. A disposal stays shred_ordered until the vault
-- destroys the key, or ends cancelled when the scope became readable again
-- (a records manager cancelled the destruction, or a legal hold arrived).
ALTER TABLE retention_disposals ADD COLUMN staged_until TEXT;
-- Why a disposal was cancelled: legal_hold, originals, or
-- destruction_cancelled (a records manager kept the scope: it is not
-- planned again until its due date moves).
ALTER TABLE retention_disposals ADD COLUMN cancel_reason TEXT;
