-- Built-in roles and what they may do. Firms change these rows, not code.
INSERT INTO roles (name, description) VALUES
    ('partner', 'Partner: full access to the matters they work on'),
    ('associate', 'Associate lawyer'),
    ('paralegal', 'Paralegal: client data with masking'),
    ('legal_assistant', 'Legal assistant (administrative staff): contact details only'),
    ('records_manager', 'Records manager: retention, holds and disposal'),
    ('security_officer', 'Security officer: audit, incidents, access reviews'),
    ('auditor', 'Auditor: reads the audit log and reports'),
    ('firm_administrator', 'Firm administrator: staff, roles, forms');

INSERT INTO role_permissions (role, permission) VALUES
    ('partner', 'client_data.read'),
    ('partner', 'client_data.write'),
    ('partner', 'matters.manage'),
    ('partner', 'holds.manage'),
    ('partner', 'break_glass.use'),
    ('associate', 'client_data.read'),
    ('associate', 'client_data.write'),
    ('associate', 'break_glass.use'),
    ('paralegal', 'client_data.read'),
    ('paralegal', 'client_data.write'),
    ('legal_assistant', 'client_data.read'),
    ('records_manager', 'client_data.shred'),
    ('records_manager', 'retention.manage'),
    ('records_manager', 'holds.manage'),
    ('security_officer', 'audit.read'),
    ('security_officer', 'incidents.manage'),
    ('security_officer', 'reviews.manage'),
    ('auditor', 'audit.read'),
    ('firm_administrator', 'staff.manage'),
    ('firm_administrator', 'matters.manage'),
    ('firm_administrator', 'forms.manage'),
    ('firm_administrator', 'reviews.manage');
